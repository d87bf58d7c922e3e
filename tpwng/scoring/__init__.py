"""Scoring new inputs with a trained checkpoint: the test set's stored features (`inference`),
one's own videos (`score_video`), live streams (`live`, `live_source`) and the pages that show
the scores (`viewer`, `viewer_server`). `scorer.load_scorer` loads what they all need."""
