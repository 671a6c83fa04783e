"""Localization: contrastive pairs (pairs) -> last-token activations (capture) -> reducers (momentum counts,
mean differences) -> a profile of the top-k units (localize) or a CAA control vector."""
