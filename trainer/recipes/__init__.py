"""Training recipes, one plain module per task: setup, a visible train loop, save."""
