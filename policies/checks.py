"""Where a policy's problem is: field names and list indexes from the file's top, as pydantic locates
errors. A leaf module: the schema, the actions and the conditions all name locations."""

Location = tuple[str | int, ...]
Problem = tuple[Location, str]
