"""HTTP adapters only: one router per noun. No business logic here."""
