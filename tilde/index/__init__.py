"""The on-disk TILDEv2 index: format, writer, reader, build job and shard merge.

Importing this package does not import torch: the build job imports it when it runs.
"""

from tilde.index.format import FORMAT_VERSION, IndexFormatError, Manifest
from tilde.index.reader import TildeIndex

__all__ = ["FORMAT_VERSION", "IndexFormatError", "Manifest", "TildeIndex"]
