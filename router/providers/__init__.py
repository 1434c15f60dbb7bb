"""Provider wire formats: the pooled HTTP transport, the built-in mock, and vendor translators."""
