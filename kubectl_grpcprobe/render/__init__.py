"""All rendering: text, wide, json, watch lines and fleet tables. Nothing else prints."""
