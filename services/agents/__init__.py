"""Agent definitions: the registry that loads the user's agents, and the shipped demo agent."""
