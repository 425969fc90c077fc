"""What a person sees in a browser; every asset is served by the box itself."""
