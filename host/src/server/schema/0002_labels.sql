-- Each gateway's labels ([gateway.labels], JSON object text), as its latest
-- status announced them; a last will leaves them as they were.
ALTER TABLE gateways ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
