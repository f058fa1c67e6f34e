"""The client side of the step API: what `hsmca certificate`, `token` and `bootstrap` use."""
