"""Network builders for the experiments; the normalization layer is a parameter."""
