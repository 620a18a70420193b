"""Initialization schemes: functions of (layer, moments so far, options, rng) -> weight arrays."""
