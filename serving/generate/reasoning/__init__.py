"""QVQ's reasoning output: where the step-by-step reasoning ends and the answer begins."""
