"""Query encoders for the ``mlm`` and ``dense`` scoring modes.

``tilde.encoders.query`` (numpy, tokenizers, onnxruntime) is the query path;
``tilde.encoders.export`` and ``tilde.encoders.dense_torch`` (torch) are offline. Only the
torch-free names are imported here, so ``import tilde.encoders`` never loads torch; import the
offline modules explicitly.
"""

from tilde.encoders.query import DenseQueryEncoder, MlmQueryEncoder, QueryEncoder
from tilde.encoders.spec import ENCODER_JSON, MLM_QUERY_MAX_LENGTH, EncoderConfig

__all__ = [
    "ENCODER_JSON",
    "MLM_QUERY_MAX_LENGTH",
    "DenseQueryEncoder",
    "EncoderConfig",
    "MlmQueryEncoder",
    "QueryEncoder",
]
