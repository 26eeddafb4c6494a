"""The data wing: images in, uint8 tensors out.

``decode`` (PIL, worker processes) -> ``folders`` (ImageFolder listings, class maps, fingerprints) /
``tensors`` (.pt/.npz and MTT folders) -> ``sets`` (ImageSet, the built-in real sets, distilled sets) ->
``backends/`` (PIL, DALI, FFCV readers) -> ``valcache`` (the decoded validation cache); ``pixels`` (uint8
<-> normalized float, resizes) and ``zca`` (ZCA whitening) are used by everything above. Nothing here
trains or imports a model.
"""
