"""What drives a model one step at a time: the generators, sampling, the per-frame pipeline,
the offline file-to-file modes and transcripts."""
