"""What every API dialect shares: the generation request, prompt building from the model's template, the
output plan for tools and schemas, running choices on a backend as events, and typed errors."""
