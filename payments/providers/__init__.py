"""Payment providers behind one interface; the simulator and production differ only in base URLs and keys."""
