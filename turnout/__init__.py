"""Turnout, imported as ``turnout.server``, ``turnout.router``, ``turnout.model_store``,
``turnout.drift`` and ``turnout.protos``: one top-level name, so installing Turnout beside
packages called ``server`` or ``router`` changes neither. In a source checkout each of these is a
link to the top-level folder of that name; a wheel holds them as real folders."""
