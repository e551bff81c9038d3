"""Evaluation: the persona classifier, revealed preferences, head-to-head Elo, their ratings, plots and reports.

Library code here takes plain arguments and `Sampler` objects (never the Hydra config), so it runs the same
from the stages (`stage=classifier|revealed|elo`), the Python API and tests:

    from charlab.eval.elo import compute_elo, load_matches
    ratings = compute_elo(load_matches("matches.jsonl"), k_factor=32.0)

    from charlab.eval.persona_classifier import ClassifierConfig, train_classifier
    clf = train_classifier(ClassifierConfig(train_path=Path("labelled.jsonl"), output_dir=Path("clf")))
    probabilities = clf.score(["Arr, matey!"])
"""
