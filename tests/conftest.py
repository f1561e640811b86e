import os

# Tests never reach the Hugging Face hub: an unknown id must fail fast with our own error.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Teacher targets cached by tests go to a folder of this session, not the user's cache (unless they chose one).
import tempfile  # noqa: E402
os.environ.setdefault("HYPERCOMPRESS_CACHE", tempfile.mkdtemp(prefix="hypercompress-test-cache-"))
