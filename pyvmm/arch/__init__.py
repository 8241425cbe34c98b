"""Architecture-specific machine set-up."""
