"""How work runs: the execution object, length-grouped batching, the inference engine and Lightning runs."""
