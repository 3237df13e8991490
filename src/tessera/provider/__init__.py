"""The provider agent: hardware probe, identity, connection loop and model backends."""
