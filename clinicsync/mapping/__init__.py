"""Declarative field maps, transforms and validation: pure and Qt-free."""
