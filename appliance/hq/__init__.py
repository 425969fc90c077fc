"""HQ's hub: one replica per store behind the box's endpoints, and the command line HQ staff use."""
