"""The node agent: the loop that turns config events into an applied layout and advertised devices."""
