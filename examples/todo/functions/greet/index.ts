import { defineFunction } from "@flux/functions";

export default defineFunction({
  name: "greet",
  handler: async ({ input, ctx }) => {
    ctx.log("invoked with", input);
    return { message: `Hello, ${input.name}!` };
  },
});
