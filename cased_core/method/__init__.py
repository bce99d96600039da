"""The method: CaSED's steps (candidates, scoring, the classifier, the image preprocess), the lexicon, and what a stream's labels go through (history, the change gate)."""
