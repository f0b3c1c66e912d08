"""Training L-MAE completers (import name ``lmae_sdk.training``)."""
