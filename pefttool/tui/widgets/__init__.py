"""Widgets shared by the screens: the run dashboard's parts and the recipe summary."""
