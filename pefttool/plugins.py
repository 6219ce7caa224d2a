"""The plugin host: the `pefttool` entry-point group's strategies, tasks and observers.

The built-ins (`plugins/pefttool_full`, `_lora`, `_qlora`, `_classification`, `_causal_lm`)
are registered through the very same entry-point group as third-party plugins, so they have
no special powers. Which plugins
load can be restricted with `PEFTTOOL_PLUGINS=name,name` (or blocked with `-name`).
Any failure to load is a one-line `PluginError` that names the plugin.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import inspect
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import pluggy

from . import hookspecs
from .errors import PluginError, did_you_mean, one_line
from .schemas import PluginSchemas
from .strategy import Strategy
from .tasks.base import Task
from .tasks.guard import GuardedTask
from .tracing import trace, tracing

GROUP = "pefttool"
ENV_SELECT = "PEFTTOOL_PLUGINS"
#: a plugin whose import takes longer than this (seconds) gets one warning at start-up
SLOW_IMPORT_S = 0.5


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str = ""
    version: str = ""
    strategies: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    hooks: list[str] = field(default_factory=list)
    import_s: float = 0.0


class PluginHost:
    """A pluggy PluginManager plus the strategies and tasks the plugins registered."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.strategies: dict[str, Strategy] = {}
        self.tasks: dict[str, Task] = {}
        self.infos: dict[str, PluginInfo] = {}
        self.left_out: list[str] = []  # installed plugins PEFTTOOL_PLUGINS did not load
        # installed plugins that failed to load (import error, invalid hooks): name → the
        # one-line error, and the traceback that PEFTTOOL_DEBUG=1 shows. They block nothing
        # else: `pefttool plugins` lists them, a recipe needing an unknown strategy names them.
        self.broken: dict[str, str] = {}
        self.broken_tracebacks: dict[str, str] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # -- loading

    def load_entry_points(self, select: str | None = None) -> None:
        selector = _Selector(select if select is not None else os.environ.get(ENV_SELECT, ""))
        seen: dict[str, str] = {}  # plugin name → the distribution that installed it
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if not selector.allows(ep.name):
                self.left_out.append(ep.name)
                continue
            dist = ep.dist.name if ep.dist else ""
            version = ep.dist.version if ep.dist else ""
            if ep.name in seen:
                # Two distributions claim one plugin name: loading either silently would let
                # the install order decide which code runs.
                raise PluginError(f"two installed distributions declare a plugin named '{ep.name}': "
                                  f"'{seen[ep.name]}' and '{dist}'; uninstall one of them")
            seen[ep.name] = dist
            began = time.perf_counter()
            try:
                # stdout belongs to pefttool's own output (`plugins --json` must stay JSON):
                # whatever a plugin prints while importing goes to stderr.
                with contextlib.redirect_stdout(sys.stderr):
                    module = ep.load()
            except (Exception, SystemExit) as exc:  # any import failure is the plugin's, and named as such
                what = f"SystemExit({exc.code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
                detail = "" if isinstance(exc, SystemExit) else f": {one_line(exc, None)}"
                self._broken(ep.name, f"plugin '{ep.name}' ({ep.value}) failed to import: {what}{detail}; "
                                      f"fix or uninstall it, or skip it with {ENV_SELECT}=-{ep.name}", exc)
                continue
            took = time.perf_counter() - began
            try:
                self.register(module, ep.name, distribution=dist, version=version)
            except PluginError as exc:
                if "is registered by both" in str(exc):
                    raise  # two plugins claim one strategy or task: which one runs must not be left to chance
                self._broken(ep.name, str(exc), exc)
                continue
            self.infos[ep.name].import_s = round(took, 3)
            if took > SLOW_IMPORT_S:
                print(f"warning: plugin '{ep.name}' took {took:.1f}s to import, which every "
                      f"pefttool command pays; import heavy libraries (torch, peft) inside the "
                      f"strategy's methods instead of at module top", file=sys.stderr)
        for name in sorted(selector.wanted - seen.keys()):
            raise PluginError(f"{ENV_SELECT} names '{name}', but no plugin of that name is installed "
                              f"(pefttool plugins lists them)")

    def _broken(self, name: str, message: str, exc: BaseException) -> None:
        """Keep a plugin that failed to load out, with its error: one warning line now."""
        import traceback

        self.broken[name] = message
        self.broken_tracebacks[name] = "".join(traceback.format_exception(exc))
        print(f"warning: {message} (skipped; the rest of pefttool works without it)", file=sys.stderr)
        if os.environ.get("PEFTTOOL_DEBUG"):
            print(self.broken_tracebacks[name], file=sys.stderr, end="")

    def register(self, plugin: Any, name: str, distribution: str = "", version: str = "") -> None:
        """Register one plugin object (module or instance) and collect its strategies and tasks.

        Anything wrong with the plugin leaves the host as it was and raises a one-line
        `PluginError` naming the plugin.
        """
        if self.pm.has_plugin(name):
            raise PluginError(f"two plugins are named '{name}'; uninstall one of them")
        unmarked = _unmarked_hooks(plugin)
        if unmarked:
            raise PluginError(f"plugin '{name}' defines {', '.join(unmarked)} without the "
                              f"@pefttool.hookimpl marker, so pefttool would never call it; mark it")
        try:
            self.pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin '{name}' is invalid: {one_line(exc, None)}") from exc
        try:
            self.pm.check_pending()  # a misspelled hook name would otherwise never be called
        except pluggy.PluginValidationError as exc:
            unknown = [c.name for c in self.pm.get_hookcallers(plugin) or [] if c.spec is None]
            self.pm.unregister(name=name)
            if not unknown:
                raise PluginError(f"plugin '{name}': {one_line(exc, None)}") from exc
            hint = did_you_mean(unknown[0], self._hook_names())
            raise PluginError(f"plugin '{name}' implements '{unknown[0]}', which is not a pefttool "
                              f"hook{hint}; check the spelling against pefttool/hookspecs.py") from exc
        info = PluginInfo(name=name, module=getattr(plugin, "__name__", type(plugin).__name__),
                          distribution=distribution, version=version)
        info.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
        self.infos[name] = info
        try:
            impl = getattr(plugin, "pefttool_register_strategies", None)
            if impl is not None:
                self._collect_strategies(name, impl)
            impl = getattr(plugin, "pefttool_register_tasks", None)
            if impl is not None:
                self._collect_tasks(name, impl)
        except PluginError:
            self.unregister(name)
            raise

    def _hook_names(self) -> list[str]:
        return sorted(n for n in vars(hookspecs) if n.startswith("pefttool_"))

    def unregister(self, name: str) -> None:
        """Remove a plugin and the strategies and tasks it registered (tests, a TUI reload)."""
        self.pm.unregister(name=name)
        info = self.infos.pop(name, None)
        for strategy in info.strategies if info else []:
            self.strategies.pop(strategy, None)
        for task in info.tasks if info else []:
            self.tasks.pop(task, None)

    def _collect_strategies(self, plugin_name: str, impl: Callable[..., None]) -> None:
        def register(strategy: Strategy) -> None:
            if not isinstance(strategy, Strategy) or not strategy.name:
                raise PluginError(f"plugin '{plugin_name}' registered {strategy!r}, which is not a "
                                  f"named pefttool.Strategy")
            _claim(plugin_name, "strategy", strategy.name, strategy, self.strategies,
                   self.infos[plugin_name].strategies)

        call_hook(plugin_name, "pefttool_register_strategies", impl, register=register)

    def _collect_tasks(self, plugin_name: str, impl: Callable[..., None]) -> None:
        def register(task: Task) -> None:
            if not isinstance(task, Task) or not getattr(task, "type", ""):
                raise PluginError(f"plugin '{plugin_name}' registered {task!r}, which is not a "
                                  f"pefttool.Task with a `type`")
            problem = task.contract_problem()
            if problem:
                raise PluginError(f"plugin '{plugin_name}' registered task '{task.type}': {problem}")
            # stored guarded: the core calls the task's methods through GuardedTask
            _claim(plugin_name, "task", task.type, cast(Task, GuardedTask(task)), self.tasks,
                   self.infos[plugin_name].tasks)

        call_hook(plugin_name, "pefttool_register_tasks", impl, register=register)

    # -- firing observer hooks

    def fire(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook on every plugin through pluggy (so `wrapper=True` /
        `hookwrapper=True` implementations work), naming the plugin if one raises."""
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            _name_failures(impl, hook_name)
        caller(**kwargs)

    def schemas(self) -> PluginSchemas:
        """What validating a recipe needs from these plugins: each strategy's options model,
        each plugin's settings model (`PluginOptions`, or None) and the plugins left out."""
        return PluginSchemas(
            strategies={name: s.Options for name, s in self.strategies.items()},
            tasks=dict(self.tasks),
            settings={name: getattr(plugin, "PluginOptions", None)
                      for name, plugin in self.pm.list_name_plugin() if name is not None},
            left_out=tuple(self.left_out), broken=dict(self.broken))

    def describe(self) -> list[dict[str, Any]]:
        """Each plugin with its hooks, strategies, tasks and their options (JSON schema)."""
        rows = []
        for info in self.infos.values():
            row = vars(info) | {"strategies": list(info.strategies), "tasks": list(info.tasks)}
            row["strategy_options"] = {
                s: self.strategies[s].Options.model_json_schema() for s in info.strategies}
            row["task_options"] = {t: self.tasks[t].Options.model_json_schema() for t in info.tasks}
            rows.append(row)
        rows += [{"name": name, "broken": message} for name, message in self.broken.items()]
        return rows


def _claim(plugin_name: str, noun: str, name: str, offer: Any, registry: dict[str, Any],
           listed: list[str]) -> None:
    """Record a registered strategy or task under `name`; a name another plugin took first is
    an error naming both (which one runs must not be left to the install order)."""
    other = registry.get(name)
    if other is not None:
        raise PluginError(f"{noun} '{name}' is registered by both plugin '{other.plugin}' and "
                          f"plugin '{plugin_name}'; uninstall one, or skip one with "
                          f"{ENV_SELECT}=-{plugin_name}")
    offer.plugin = plugin_name
    registry[name] = offer
    listed.append(name)


def call_hook(plugin_name: str, hook_name: str, function: Callable[..., Any], **kwargs: Any) -> Any:
    """Call one plugin's hook function; an exception becomes a `PluginError` naming the plugin
    and the hook. With PEFTTOOL_TRACE_HOOKS=1, each call is traced on stderr with its time."""
    began = time.perf_counter()
    try:
        return function(**kwargs)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin '{plugin_name}' raised in {hook_name}: "
                          f"{type(exc).__name__}: {one_line(exc, None)}") from exc
    finally:
        if tracing():
            trace(hook_name, plugin_name, began)


def _name_failures(impl: Any, hook_name: str) -> None:
    """Wrap a plain hook implementation once, so a failure names its plugin (pluggy itself
    re-raises the bare exception). Wrappers are left as they are: they wrap the others."""
    if getattr(impl.function, "_pefttool_named", False) or impl.hookwrapper or \
            getattr(impl, "wrapper", False):
        return
    function, plugin_name = impl.function, impl.plugin_name

    def named(*args: Any) -> Any:
        return call_hook(plugin_name, hook_name, lambda: function(*args))

    named._pefttool_named = True  # type: ignore[attr-defined]
    impl.function = named


def _unmarked_hooks(plugin: Any) -> list[str]:
    """`pefttool_*` functions of a plugin that lack the hookimpl marker (pluggy ignores them)."""
    names = []
    for attr in dir(plugin):
        if not attr.startswith("pefttool_"):
            continue
        value = inspect.getattr_static(plugin, attr, None)
        function = getattr(value, "__func__", value)
        if inspect.isfunction(function) and not hasattr(function, f"{GROUP}_impl"):
            names.append(attr)
    return names


class _Selector:
    """`PEFTTOOL_PLUGINS`: empty = all; `a,b` = only those; `-c` = all but c."""

    def __init__(self, text: str):
        names = [n.strip() for n in text.split(",") if n.strip()]
        self.blocked = {n[1:] for n in names if n.startswith("-")}
        self.wanted = {n for n in names if not n.startswith("-")}

    def allows(self, name: str) -> bool:
        if name in self.blocked:
            return False
        return not self.wanted or name in self.wanted


_host: PluginHost | None = None


def get_plugin_host(refresh: bool = False) -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _host
    if _host is None or refresh:
        host = PluginHost()
        host.load_entry_points()
        _host = host
    return _host
