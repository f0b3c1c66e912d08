"""``python -m lmae_sdk.cli``: the ``lmae`` command (e.g. under torch.distributed.run)."""
from lmae_sdk.cli import main

if __name__ == "__main__":
    main()
