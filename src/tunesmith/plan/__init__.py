"""Plan before you spend: memory and time estimates, recommended settings, and the environment doctor.

Nothing here allocates real weights: models are built on the meta device from their configs, and
data is measured through the real templating, tokenizing and packing pipeline.
"""
