"""The app's screens: Recipes, Adjust, Plugins, Runs, the run dashboard, and modals."""
