"""weka-assets."""
