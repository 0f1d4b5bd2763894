"""A module that defines no server at all."""

VALUE = 1
