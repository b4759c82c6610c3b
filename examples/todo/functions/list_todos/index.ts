import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "list_todos",
  handler: async ({ input, ctx }) => {
    const filters = [];
    if (input.done !== undefined) {
      filters.push({ column: "done", op: "eq", value: input.done === true || input.done === "true" });
    }
    const rows = await ctx.db.query({
      table: "todos",
      operation: "select",
      columns: ["id", "title", "done", "due_date"],
      filters,
      order: [{ column: "id", direction: "asc" }],
      limit: 100,
    });
    return { todos: rows, count: rows.length };
  },
});
