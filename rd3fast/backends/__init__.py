"""Import-guarded readers for large real sets (DALI, FFCV); each yields the same (x, y) as the native path."""
