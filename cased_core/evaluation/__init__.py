"""The metrics of the paper and of label streams, and the evaluation that computes them."""
