ALTER TABLE todos ADD COLUMN due_date date;
CREATE INDEX todos_done_idx ON todos (done);
