"""Fuzzing of napari-sima's readers (``make fuzz``; a short run is part of ``make test``)."""
