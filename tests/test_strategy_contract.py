"""The deeper strategy contract: parameter groups (LoRA+-style per-group lr), an own optimizer,
an own loss, a batch hook, and the recipe's `train.optimizer` choices."""

from __future__ import annotations

import pytest
import torch

import pefttool
from pefttool import Strategy, load_recipe
from pefttool.engine import run_recipe
from pefttool.optim import build_optimizer, optimizer_problem, state_bytes
from pefttool.plugins import get_plugin_host
from tiny_models import write_tiny_recipe


class Contract(Strategy):
    """Trains everything; records what the engine called, with which arguments."""

    name = "contract"
    description = "exercises every optional strategy method"

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def param_groups(self, model, recipe, options):
        self._count("param_groups")
        params = [p for p in model.parameters() if p.requires_grad]
        head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
        rest = [p for p in params if all(p is not h for h in head)]
        return [{"params": rest}, {"params": head, "lr": recipe.train.lr * 16}]

    def make_optimizer(self, param_groups, recipe, options):
        self._count("make_optimizer")
        self.optimizer = torch.optim.SGD(param_groups, lr=recipe.train.lr)
        return self.optimizer

    def prepare_batch(self, batch, recipe, options):
        self._count("prepare_batch")
        return {**batch, "seen": torch.ones(())}

    def compute_loss(self, outputs, batch, recipe, options):
        self._count("compute_loss")
        assert "seen" in batch
        batch.pop("seen")
        return outputs.loss * 2.0


class ContractPlugin:
    def __init__(self) -> None:
        self.strategy = Contract()

    @pefttool.hookimpl
    def pefttool_register_strategies(self, register):
        register(self.strategy)


@pytest.fixture
def contract():
    host = get_plugin_host()
    plugin = ContractPlugin()
    host.register(plugin, name="contract-plugin")
    yield plugin.strategy
    host.unregister("contract-plugin")


def test_every_optional_strategy_method_is_called_by_the_engine(tmp_path, tiny_classifier_dir, contract):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "contract",
                             overrides={"train.epochs": 1, "train.lr": 1e-3, "train.scheduler": "constant"})

    result = run_recipe(load_recipe(path))

    assert result.status == "completed"
    assert contract.calls["param_groups"] == 1 and contract.calls["make_optimizer"] == 1
    batches = contract.calls["prepare_batch"]
    assert batches >= result.steps and contract.calls["compute_loss"] == batches
    lrs = [g["lr"] for g in contract.optimizer.param_groups]
    assert isinstance(contract.optimizer, torch.optim.SGD)
    assert lrs[1] == pytest.approx(16 * lrs[0])  # the group's own lr survives the scheduler


def test_a_strategy_reading_the_logits_keeps_the_full_logits_of_a_causal_lm(tmp_path, tiny_causal_dir, contract):
    """Its `compute_loss` gets the model's outputs with logits: the chunked loss (on by default
    for a causal LM) stays off, and asking for it is one line naming the key."""
    from pefttool.errors import RecipeError
    from pefttool.settled import settle

    path = write_tiny_recipe(tmp_path, tiny_causal_dir, "contract", task="causal-lm", overrides={
        "train.max_steps": 2, "train.lr": 1e-3, "eval.before_training": False})
    recipe = load_recipe(path)
    run = settle(recipe)
    assert run.loss_chunks == 0 and run.loss_chunks_why == ("strategy 'contract' computes its own "
                                                            "loss from the model's logits")
    assert run_recipe(recipe).status == "completed" and contract.calls["compute_loss"] >= 2
    asked = load_recipe(write_tiny_recipe(tmp_path, tiny_causal_dir, "contract", task="causal-lm",
                                          name="asked", overrides={"train.loss_chunks": 4}))
    with pytest.raises(RecipeError, match="train.loss_chunks: strategy 'contract' computes its own "
                                          "loss from the model's logits, which the chunked loss "
                                          "never makes; set train.loss_chunks = 0"):
        settle(asked)


def _optimizer_for(tmp_path, model_dir, name):
    recipe = load_recipe(write_tiny_recipe(tmp_path, model_dir, "full", overrides={"train.optimizer": name}))
    model = torch.nn.Sequential(torch.nn.Linear(128, 128), torch.nn.LayerNorm(128))
    optimizer = build_optimizer(get_plugin_host().strategies["full"], model, recipe, recipe.strategy_options)
    model(torch.randn(4, 128)).pow(2).mean().backward()
    optimizer.step()
    return optimizer


def test_adamw_8bit_keeps_a_quarter_of_the_state(tmp_path, tiny_classifier_dir):
    fp32 = state_bytes(_optimizer_for(tmp_path / "a", tiny_classifier_dir, "adamw"))
    eight = _optimizer_for(tmp_path / "b", tiny_classifier_dir, "adamw_8bit")
    assert type(eight).__name__ == "AdamW8bit"
    assert state_bytes(eight) <= 0.3 * fp32


def test_adamw_uses_the_fused_kernel_and_steps_like_the_default_one(tmp_path, tiny_classifier_dir):
    fused = _optimizer_for(tmp_path, tiny_classifier_dir, "adamw")
    assert isinstance(fused, torch.optim.AdamW) and fused.defaults["fused"] is True
    # the same update as the foreach kernel (what torch picks without fused=True)
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 8)
    b = torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    opts = [torch.optim.AdamW(a.parameters(), lr=1e-2, fused=True), torch.optim.AdamW(b.parameters(), lr=1e-2)]
    x = torch.randn(4, 8)
    for _ in range(3):
        for model, opt in zip((a, b), opts):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
    assert torch.allclose(a.weight, b.weight, atol=1e-6) and not torch.allclose(a.weight, start)


def test_adafactor_comes_from_transformers(tmp_path, tiny_classifier_dir):
    assert type(_optimizer_for(tmp_path, tiny_classifier_dir, "adafactor")).__name__ == "Adafactor"


def test_a_paged_optimizer_on_cpu_is_one_recipe_problem_naming_what_runs(tmp_path, tiny_classifier_dir):
    path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora",
                             overrides={"train.optimizer": "paged_adamw_8bit", "train.device": "cpu"})
    with pytest.raises(pefttool.RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert "train.optimizer: 'paged_adamw_8bit'" in message and "adamw_8bit" in message
    assert "\n" not in message


def test_optimizer_problem_without_a_gpu_lists_the_runnable_ones():
    problem = optimizer_problem("paged_adamw_32bit", "auto", lambda: False)
    assert problem.endswith("use one of adamw, adamw_8bit, adafactor")
    assert optimizer_problem("paged_adamw_32bit", "auto", lambda: True) is None
    assert optimizer_problem("adamw", "cpu", lambda: pytest.fail("asked for no reason")) is None


def test_peft_wrap_takes_any_peft_config_and_trains_the_head(tmp_path, tiny_classifier_dir, recwarn):
    from peft import IA3Config
    from transformers import AutoModelForSequenceClassification

    recipe = load_recipe(write_tiny_recipe(tmp_path, tiny_classifier_dir, "lora"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir)
    wrapped = pefttool.peft_wrap(model, IA3Config(target_modules="all-linear", feedforward_modules=[]),
                                 recipe)

    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("ia3_l" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)  # the new head trains
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_the_tui_shows_a_default_factory_option_by_its_value():
    from pydantic import Field

    from pefttool.strategy import StrategyOptions
    from pefttool.tui.screens.plugins import describe_strategies

    class Opts(StrategyOptions):
        layers: list[str] = Field(default_factory=lambda: ["query", "value"])

    class WithFactory(Strategy):
        name = "factory"
        Options = Opts

    class Host:
        strategies = {"factory": WithFactory()}
        tasks: dict = {}

    assert describe_strategies(Host())["strategy factory"]["options"] == [("layers", "['query', 'value']", "")]


class LogitsWatch(Strategy):
    """Trains everything; at backward time, records whether the forward's logits still live."""

    name = "logits-watch"
    description = "checks that the engine drops the model outputs before backward"

    def __init__(self) -> None:
        self.alive_in_backward: list[bool] = []

    def compute_loss(self, outputs, batch, recipe, options):
        import weakref

        logits = weakref.ref(outputs.logits)
        loss = outputs.loss * 1.0
        loss.register_hook(lambda grad: self.alive_in_backward.append(logits() is not None))
        return loss


def test_the_logits_do_not_live_through_backward(tmp_path, tiny_causal_dir):
    """batch x length x vocab floats (768 MiB for SmolLM2 at 8 x 512, more than all the
    checkpointed activations): the engine must not hold them while gradients are computed,
    nor through the next step's forward."""
    host, plugin = get_plugin_host(), ContractPlugin()
    plugin.strategy = LogitsWatch()
    host.register(plugin, name="logits-watch-plugin")
    try:
        path = write_tiny_recipe(tmp_path, tiny_causal_dir, "logits-watch", task="causal-lm",
                                 overrides={"train.max_steps": 3, "eval.before_training": False})
        assert run_recipe(load_recipe(path)).status == "completed"
    finally:
        host.unregister("logits-watch-plugin")
    assert plugin.strategy.alive_in_backward == [False, False, False]


def _noisy_lora():
    from pefttool_lora import LoraOptions, LoraStrategy

    class NoisyOptions(pefttool.StrategyOptions):
        alpha: float = 5.0               # this strategy's own (NEFTune's noise scale, say)
        lora: LoraOptions = LoraOptions()  # LoRA's keys, as the table [method.lora]

    class NoisyLora(Strategy):
        name = "noisy-lora"
        description = "LoRA plus an option named like one of LoRA's"
        Options = NoisyOptions

        def wrap(self, model, recipe, options):
            from pefttool.adapters import add_lora

            return add_lora(model, recipe, options.lora)

        def save(self, model, out_dir, recipe, options):
            LoraStrategy().save(model, out_dir, recipe, options.lora)

    return NoisyLora()


def test_a_strategy_built_on_lora_keeps_loras_keys_in_a_table_of_their_own(tmp_path, tiny_classifier_dir):
    """Issue 29, item 5: a strategy that builds on LoRA and has an `alpha` of its own takes
    LoRA's keys as a nested table, `[method.lora]`, and calls the exported LoRA wrap."""
    import json

    host, plugin = get_plugin_host(), ContractPlugin()
    plugin.strategy = _noisy_lora()
    host.register(plugin, name="noisy-lora-plugin")
    try:
        path = write_tiny_recipe(tmp_path, tiny_classifier_dir, "noisy-lora", overrides={
            "method.alpha": 7.5, "method.lora.r": 4, "method.lora.alpha": 8,
            "train.max_steps": 2, "eval.before_training": False})
        recipe = load_recipe(path)
        assert recipe.strategy_options.alpha == 7.5 and recipe.strategy_options.lora.r == 4
        with pytest.raises(pefttool.RecipeError, match="method.lora.rank"):
            load_recipe(path, ["method.lora.rank=4"])
        result = run_recipe(recipe)
        assert result.status == "completed"
        config = json.loads((result.model_dir / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"]) == (4, 8)
    finally:
        host.unregister("noisy-lora-plugin")
