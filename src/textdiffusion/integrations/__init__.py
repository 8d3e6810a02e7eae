"""Where textdiffusion meets other libraries: transformers (``hf.py``: our models as
``PreTrainedModel``s, our tokenizers as ``PreTrainedTokenizerFast``s, the export), the
lm-evaluation-harness (``harness.py``: our model as an lm_eval ``LM``) and the import hooks that
register with both when they are imported (``hooks.py``: why they are still needed)."""
