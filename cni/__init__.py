"""The knet CNI plugin (spec 1.0.0/1.1.0): a thin executable, an agent, and the data path."""
