"""Triton kernels for rd3fast (installed as ``rd3fast.kernels``; the spec they equal is ``rd3fast.engine.aug``).

``fused_augment`` is what ``ResidentLoader`` calls on CUDA (``--aug-backend auto|triton``). On a machine
without CUDA the kernels run on CPU tensors only under ``TRITON_INTERPRET=1`` set before this package is
first imported (tests/conftest.py does that).
"""
from .augment import crop_resize_flip_normalize, fused_augment, interpreted, max_taps, normalize_u8, patch_shuffle_u8

__all__ = ["crop_resize_flip_normalize", "fused_augment", "interpreted", "max_taps", "normalize_u8",
           "patch_shuffle_u8"]
