"""What is counted and where: the product master, code resolution, floors and racks."""
