"""The data wing: images in, uint8 tensors out.

``decode`` (PIL, worker processes) -> ``folders`` (ImageFolder listings, class maps, fingerprints;
``listing_cache``: ImageNet-size listings cached) / ``tensors`` (.pt/.npz and MTT folders) / the named
datasets' native readers (``cifar``, ``mnist`` + ``idx``, ``tiny_imagenet``, ``imagenet``; ``datasets`` is
their registry: defaults, class order, --data-root) -> ``sets`` (ImageSet, real and distilled sets) ->
``backends/`` (PIL, DALI, FFCV readers) -> ``valcache`` (the decoded validation cache); ``content``: what a
run's identity hashes (file contents through a stat-keyed cache); ``pixels`` (uint8
<-> normalized float, resizes) and ``zca`` (ZCA whitening) are used by everything above. Nothing here
trains or imports a model.
"""
