"""The bench wing: a sweep of many runs (``python -m rd3fast.bench``) and its leaderboard.

``sweepfile`` (the TOML) -> ``identity`` (what a run's id hashes) -> ``plan`` (runs grouped K at once) ->
``store`` (ROOT's files) -> ``group`` (one group trained) / ``estimate`` (the cost printed first) ->
``teachers`` (loaded at plan time) -> ``executors`` (local or Ray); ``board`` (ROOT read into cells) ->
``inference`` (intervals, tests) -> ``stats`` -> ``scores`` (DD-Ranking's) -> ``render`` (md, csv, png) +
``page`` (html); ``default_sweep`` and ``__main__`` (the CLI) on top.
"""
