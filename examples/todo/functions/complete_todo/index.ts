import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "complete_todo",
  handler: async ({ input, ctx }) => {
    const rows = await ctx.db.query({
      table: "todos",
      operation: "update",
      values: { done: true },
      filters: [{ column: "id", op: "eq", value: input.id }],
      returning: ["id", "title", "done"],
    });
    if (rows.length === 0) {
      throw new Error(`todo ${input.id} not found`);
    }
    return { todo: rows[0] };
  },
});
