"""callray: OpenAI Realtime voice agents for phone and browser calls, on Ray."""
