"""The deployment files under deploy/, checked offline."""
