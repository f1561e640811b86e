__version__ = "0.1.0"

# Compressed Hugging Face folders name `model_type: hypercompress`; importing the package registers that type with
# transformers' AutoConfig / AutoModelForCausalLM (nbs/23_checkpoint.ipynb), so stock `from_pretrained` reads them.
from . import checkpoint as _checkpoint  # noqa: E402,F401
