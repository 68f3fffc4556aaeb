"""Modules that keep mail on this machine (`storage.*`): local final delivery."""
